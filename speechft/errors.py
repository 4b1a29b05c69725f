"""The one exception type users see.

Every problem caused by the user's input (a file, a key, a value) is raised as a
`SpeechFTError` whose message is a single line naming the bad thing and what to do.
The CLI prints it without a traceback (``--debug`` shows one) and exits non-zero.
"""


class SpeechFTError(Exception):
    """A problem with the user's input, explained in one line."""

    def __init__(self, message: str):
        # Collapse newlines: the contract is one readable line.
        super().__init__(" ".join(str(message).split()))
