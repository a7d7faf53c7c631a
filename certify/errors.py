"""Why a run may stop for a reason outside it, and be resumed later."""


class ResumableStop(RuntimeError):
    """The run stopped for an outside reason (an API's query budget, an API that keeps failing or asks to
    wait too long); the finished images are kept, so the same command resumes it later."""
