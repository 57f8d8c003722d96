"""Imported by the bundle configs: from then on an uncaught error ends with its reason, not MONAI's wrapper.

See `mediclip_monai.errors.report_uncaught` (``MEDICLIP_TRACEBACK=1`` shows full tracebacks).
"""

from .errors import install_excepthook

install_excepthook()
