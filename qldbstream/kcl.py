"""The deployed KCL record processor command ``python -m qldbstream.kcl`` (see
:mod:`qldbstream.runtimes.kcl`, where it lives). Kept so deployed ``.properties`` files and images
keep working.
"""

import sys

from qldbstream.runtimes.kcl import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
