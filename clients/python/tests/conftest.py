"""Makes `taskgate_client` importable when pytest runs from clients/python without installing it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
