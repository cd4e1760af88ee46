"""`python -m selva_engine.conformance GOLDEN_DIR`: see selva_engine.conformance.runner."""

import sys

from selva_engine.conformance.runner import main

sys.exit(main())
