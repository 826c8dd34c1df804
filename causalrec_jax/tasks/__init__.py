"""One module per kind of run, the orchestration of the training core (DESIGN §1):
`ordinary` (ordinary and causal runs, cross-validation folds, tuning populations),
`sequential` (SASRec, BERT4Rec, HSTU), `uplift` (the effect of recommending) and `ope` (off-policy
evaluation). Each computes; the run folder is written above, in `runs/`."""
