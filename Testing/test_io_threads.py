"""Reading cases from several threads at once, as fingerprinting and training do."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from MedAnalysisLib.data.datasets import load_dataset, read_case
from MedAnalysisLib.phantom import write_phantom_dataset


def test_cases_read_on_two_threads_match_a_single_threaded_read(tmp_path):
    # ITK's image IO corrupted the heap ("double free or corruption", "munmap_chunk(): invalid pointer") when two
    # threads read these files at once; file IO is now serialised by io.files.SIMPLEITK_IO_LOCK. Without the lock
    # this loop aborted the interpreter within a few hundred reads.
    root = write_phantom_dataset(tmp_path / "phantoms", n_cases=6, seed=0)
    dataset = load_dataset(root / "classification.csv", task="classification")
    expected = [read_case(case) for case in dataset.cases]

    def matches(index: int) -> bool:
        images, label = read_case(dataset.cases[index % len(dataset.cases)])
        want_images, want_label = expected[index % len(dataset.cases)]
        return bool(np.array_equal(images[0].array, want_images[0].array) and np.array_equal(label.array, want_label.array))

    with ThreadPoolExecutor(max_workers=2) as pool:
        assert all(pool.map(matches, range(600)))
