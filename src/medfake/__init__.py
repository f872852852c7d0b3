"""medfake: simulate, detect and benchmark tampering of medical scans."""

from medfake.errors import MedfakeError
from medfake.scan import Scan

__version__ = "0.1.0"
__all__ = ["MedfakeError", "Scan", "__version__"]
