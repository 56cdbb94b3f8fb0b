# SPDX-License-Identifier: MIT
"""``python -m passt_py``: same as the passt-py console script."""

from passt_py.main import main

raise SystemExit(main())
