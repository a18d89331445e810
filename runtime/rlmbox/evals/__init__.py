"""Evaluations: task files, built-in suites generated offline from a seed, and their scorers."""

from rlmbox.evals.scorers import SCORERS, score
from rlmbox.evals.tasks import Task, TaskFileProblem, read_tasks, write_tasks

__all__ = ["SCORERS", "Task", "TaskFileProblem", "read_tasks", "score", "write_tasks"]
