"""Prompt templates of a project (FLAN-style): structured rows rendered into prompts through
labelapp.formats.templating. Editing a template bumps its `version`; every prompt rendered from it keeps
the id and version it was rendered with in its metadata."""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from labelapp.formats.templating import MODES, Template, TemplateError
from labelapp.models.labels import Project

# The fields whose change makes a new version (what a rendered prompt depends on).
RENDERED_FIELDS = ("text", "system_prompt", "cot_cue", "few_shot", "seed", "mode", "separator", "answer_prefix")


class PromptTemplate(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompt_templates")
    name = models.CharField(max_length=120)
    text = models.TextField(help_text="The prompt with {placeholders} naming the row's fields; literal braces doubled.")
    system_prompt = models.TextField(blank=True, help_text="Optional system turn (chat) or first paragraph (text).")
    cot_cue = models.CharField(max_length=500, blank=True, help_text="Optional chain-of-thought cue appended to the row's turn.")
    few_shot = models.PositiveSmallIntegerField(
        default=0, validators=[MinValueValidator(0), MaxValueValidator(16)],
        help_text="Examples drawn from the other rows of the same data (with their targets), 0–16.",
    )
    seed = models.IntegerField(default=0, help_text="Seed of the few-shot draws (reproducible per row).")
    mode = models.CharField(max_length=8, choices=[(m, m) for m in MODES], default="chat")
    separator = models.CharField(max_length=20, default="\n\n", blank=True, help_text="Text mode: between examples.")
    answer_prefix = models.CharField(max_length=60, default="Answer: ", blank=True, help_text="Text mode: before each answer.")
    version = models.PositiveIntegerField(default=1, help_text="Bumped on every edit that changes what it renders.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="prompttemplate_unique_name")]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    def as_template(self) -> Template:
        return Template(
            name=self.name, text=self.text, system_prompt=self.system_prompt, cot_cue=self.cot_cue,
            few_shot=self.few_shot, mode=self.mode, separator=self.separator, answer_prefix=self.answer_prefix,
            ident=self.pk, version=self.version, seed=self.seed,
        )

    def clean(self) -> None:
        try:
            self.as_template().check()
        except TemplateError as exc:
            raise ValidationError({template_error_field(str(exc)): str(exc)}) from None


def template_error_field(message: str) -> str:
    """Which field of a template a TemplateError of `Template.check` is about."""
    for field, marker in (("name", "needs a name"), ("mode", "mode must"), ("few_shot", "few_shot must")):
        if marker in message:
            return field
    return "text"
