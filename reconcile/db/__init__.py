"""Database dialects: what differs between plain PostgreSQL and Aurora DSQL, and nothing else."""
