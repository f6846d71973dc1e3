"""rowprompt: one prompt, every row, the cheapest way that still meets your deadline.

>>> import rowprompt
>>> table = rowprompt.run("reviews.csv", prompt="Sentiment of: {{ review }}", mode="batch")
"""

from rowprompt.api import Estimate, Job, JobStatus, estimate, run, submit
from rowprompt.errors import RowpromptError

__version__ = "0.1.0"

__all__ = [
    "Estimate",
    "Job",
    "JobStatus",
    "RowpromptError",
    "__version__",
    "estimate",
    "run",
    "submit",
]
