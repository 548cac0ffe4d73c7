"""The studio's data model: labels (labels.py) and the training loop (runs.py)."""
from labelapp.models.evaluation import Comparison, EvaluationTask  # noqa: F401  (after runs: it uses Round)
from labelapp.models.labels import (  # noqa: F401
    ApiToken,
    Assignment,
    Category,
    Completion,
    Demonstration,
    Flag,
    Membership,
    ModelVersion,
    Project,
    Prompt,
    Queue,
    Ranking,
    RankingTask,
    Role,
)
from labelapp.models.quality import Adjudication, AILabel, ReliabilityFit  # noqa: F401
from labelapp.models.runs import Round, TrainingRun  # noqa: F401
from labelapp.models.templates import PromptTemplate  # noqa: F401
