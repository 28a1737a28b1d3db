"""On/off knobs given on the command line must arrive as booleans.

``python -m monai.bundle run`` reads its arguments with Python Fire, which turns ``True`` / ``False`` into booleans but
passes ``true`` / ``false`` on as strings, and the string ``"false"`` counts as true: ``--tta false`` would silently
leave test-time augmentation on. The workflows check their flags first and say how to write them.
"""


def require_flags(**flags: object) -> None:
    """Raise a one-line error for the first flag that is not a bool."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(
                f"--{name} must be True or False (capitalised: Fire reads only those as booleans), got {value!r}."
            )
