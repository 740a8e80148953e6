import sys

from MedAnalysisLib.cli import main

sys.exit(main())
