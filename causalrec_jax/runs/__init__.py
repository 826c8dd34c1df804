"""The run folder (DESIGN §2): writing it atomically, refusing to overwrite, resuming
(`folder`), training a run of any kind into it (`train`), and reading it back to recommend
and evaluate (`load`)."""
