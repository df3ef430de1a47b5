"""mobilereid: person re-identification models made small, fast and verified for edge devices.

This package's top level imports nothing heavy: `mobilereid.metrics` and `mobilereid.data.preprocess`
are numpy-only so that the on-device evaluator (mobilereid/device/) can use the very same code without torch.
"""

__version__ = "0.1.0"
