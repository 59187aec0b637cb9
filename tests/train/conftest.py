"""Make the toy model helper importable from the train tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
