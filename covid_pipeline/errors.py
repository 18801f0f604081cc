"""The one user-facing error type (kept dependency-free so the CLI starts fast)."""


class ManifestError(ValueError):
    """Bad input or parameters: a one-line message that names the file or flag and the fix."""
