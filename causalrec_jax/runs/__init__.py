"""The run folder (DESIGN §2): writing it atomically, refusing to overwrite, resuming
(`folder`), training a run of any kind into it (`train`), reading it back to recommend
and evaluate (`load`), and exporting it to TensorBoard and MLflow (`track`)."""
