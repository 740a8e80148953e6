"""Property-based fuzzing of the readers: mutated NIfTI, NRRD, MetaImage and DICOM files, detached NRRD/MetaImage
headers whose data files point elsewhere (outside their folder, at a FIFO, at lists and patterns), gzip streams with
lying trailers, bundle.json documents and zip bundles either load or fail with a typed MedAnalysisError that says
what was expected (``CLEAN_FAILURES``).

The default run is short and deterministic (``derandomize=True``, a few hundred executions in all, a few seconds);
``pytest -m nightly Testing/fuzz`` runs thousands of random executions per target. A failure prints the input
(hypothesis shrinks it); fix the reader, then add the input, built in code, to the hostile-input tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import harness
import mutations
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

#: Executions per target in the default suite (each one writes, reads and deletes a few small files).
SHORT_EXAMPLES = {"nifti": 40, "nifti_gz": 25, "nrrd": 30, "mha": 30, "nrrd_detached": 30, "mha_detached": 30,
                  "dicom": 30, "bundle_json": 40, "bundle_zip": 25}
NIGHTLY_EXAMPLES = 3000

#: Outcome counts per target of this process (``ok`` or the error type): printed by the nightly run.
OUTCOMES: dict[str, Counter[str]] = {}


def strategy(name: str) -> st.SearchStrategy[bytes]:
    """Mutations of the target's seed: generic byte edits plus the structured edits that fit its format."""
    seed = harness.TARGETS[name][1]()
    structured: dict[str, Callable[[bytes], st.SearchStrategy[bytes]]] = {
        "nifti": mutations.nifti_field_mutations,
        "nifti_gz": mutations.gzip_mutations,
        "nrrd": lambda data: mutations.text_header_mutations(data) | mutations.gzip_mutations(data),
        "nrrd_detached": mutations.detached_header_mutations,
        "mha_detached": mutations.detached_header_mutations,
        "mha": mutations.text_header_mutations,
        "dicom": mutations.dicom_field_mutations,
        "bundle_json": mutations.bundle_json_mutations,
        "bundle_zip": mutations.zip_mutations,
    }
    generic = mutations.byte_mutations(seed, header_bytes=700 if name == "dicom" else 512)
    if name in structured:
        return st.one_of(structured[name](seed), generic) if name != "bundle_zip" else structured[name](seed)
    return generic


def fuzz(name: str, examples: int, *, deterministic: bool) -> Counter[str]:
    target = harness.TARGETS[name][0]
    outcomes = OUTCOMES.setdefault(name, Counter())

    @settings(max_examples=examples, deadline=None, database=None, derandomize=deterministic, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(data=strategy(name))
    def run(data: bytes) -> None:
        outcomes[harness.run_clean(target, data)] += 1

    run()
    return outcomes


@pytest.mark.parametrize("name", sorted(harness.TARGETS))
def test_seed_is_accepted(name: str) -> None:
    """Mutations start from a file the reader accepts, so refusals below are caused by the mutation."""
    target, seed = harness.TARGETS[name]
    assert harness.run_clean(target, seed()) == "ok"


@pytest.mark.parametrize("name", sorted(harness.TARGETS))
def test_fuzz_short(name: str) -> None:
    outcomes = fuzz(name, SHORT_EXAMPLES[name], deterministic=True)
    assert sum(outcomes.values()) >= SHORT_EXAMPLES[name] // 2  # hypothesis may stop early on duplicates
    assert set(outcomes) - {"ok"}, f"no mutation of {name} was refused: the mutations do not reach the parser"


@pytest.mark.nightly
@pytest.mark.parametrize("name", sorted(harness.TARGETS))
def test_fuzz_nightly(name: str) -> None:
    outcomes = fuzz(name, NIGHTLY_EXAMPLES, deterministic=False)
    print(f"{name}: {sum(outcomes.values())} executions: {dict(outcomes.most_common())}")
