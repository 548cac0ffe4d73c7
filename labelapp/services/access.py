"""Who may do what in a project. Roles rank annotator < reviewer < admin; superusers are admins."""
from __future__ import annotations

from django.core.exceptions import PermissionDenied

from labelapp.models import Membership, Project, Role

RANK = {Role.ANNOTATOR: 1, Role.REVIEWER: 2, Role.ADMIN: 3}


def role_of(*, project: Project, user) -> str | None:
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return None
    if user.is_superuser:
        return Role.ADMIN
    return Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()


def has_role(*, project: Project, user, role: str) -> bool:
    current = role_of(project=project, user=user)
    return current is not None and RANK[Role(current)] >= RANK[Role(role)]


def require_role(*, project: Project, user, role: str) -> None:
    if not has_role(project=project, user=user, role=role):
        raise PermissionDenied(f"You need the {Role(role).label.lower()} role in {project.name} to do this.")
