"""Reports from run folders (`causalrec report`): which kind of run a folder holds (`runs`),
tables of mean ± std and the 95% interval over seeds in markdown and CSV (`tables`), the
figures of reports and experiment scripts (`plots`), and the report folder (`write`)."""
