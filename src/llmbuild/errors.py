"""The one error type the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input: the message names the file, the field and the fix, on one line."""

    def __init__(self, message: str, *, path: object = None, field: str | None = None):
        self.path, self.field, self.detail = path, field, message
        parts = []
        if path is not None:
            parts.append(str(path))
        if field:
            parts.append(field)
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)
