"""The two ways a run ends early, and what the CLI does with each.

- `UserError` (a `ValueError`): a mistake the user can fix (a wrong key, a missing file, a
  model from another run). Pure functions raise plain `ValueError`/`TypeError`; a stage turns
  what it hands on into a `UserError` with the file or key it concerns. The CLI prints one
  line and exits with status 2.
- `SelfCheckFailed`: introspect checked its own work (the merged model against the two-step
  path, the ONNX export against scikit-learn) and it disagrees: a bug, not the user's doing.
  Nothing was written; the CLI prints one line asking for a report and exits with status 1.
"""


class UserError(ValueError):
    """A mistake the user can fix: the message says what is wrong and what to do."""


class SelfCheckFailed(Exception):
    """introspect's own result failed its check; nothing was written."""


def refuse_unless(section: str, checks: list[tuple[bool, str]]) -> None:
    """A settings object's checks: the first that fails is one line naming `section.key`."""
    for ok, text in checks:
        if not ok:
            raise UserError(f"{section}.{text}")
