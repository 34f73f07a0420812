"""The one error the codec raises: a peer broke the wire contract."""


class ProtocolError(Exception):
    """A connection-level error: answer with an error frame, then close.

    `code` is the wire code (`frame_invalid`, `mac_invalid`, ...); `re` is the
    received `seq` for `seq_invalid` (docs/PROTOCOL.md §1.4).
    """

    def __init__(self, code: str, detail: str = "", re=None, send_frame: bool = True):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
        self.re = re
        # A missing hello closes without a frame (docs/PROTOCOL.md §2.1); everything else answers.
        self.send_frame = send_frame
        self.who = None   # a refused hello: the credential id it named, unchecked
