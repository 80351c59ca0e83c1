"""What happens after the pipeline: the model registry on disk (registry: champion, history,
promotion by renames, rollback), the champion/challenger gate (gate), the scheduled retrain loop's
steps (retrain) and its report (report). graft.retrain_flow runs the loop as a Prefect flow. Imports
graft.deploy and everything below it."""
