"""The run command's demo: a user per role, and the synthetic world's gallery with simulated rankings."""

from __future__ import annotations

from dataclasses import dataclass, field

from annotation.models import Role
from annotation.services.users import generate_password, user_ensure
from training.world import world_gallery_seed, world_rankings_simulate

DEMO_USERS = (("annotator", Role.ANNOTATOR), ("admin", Role.ADMIN), ("researcher", Role.RESEARCHER))
PROMPTS_PER_SUBCATEGORY = 6
SIMULATED_RANKINGS_PER_TASK = 2  # of 3 required, so every task still waits for one human


@dataclass
class DemoReport:
    credentials: list[tuple[str, str, str]] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)


def demo_seed() -> DemoReport:
    report = DemoReport()
    for username, role in DEMO_USERS:
        password = generate_password()
        user_ensure(username=username, role=role, password=password)
        report.credentials.append((username, role, password))
    world = world_gallery_seed(per_subcategory=PROMPTS_PER_SUBCATEGORY, seed=0)
    simulated = world_rankings_simulate(per_task=SIMULATED_RANKINGS_PER_TASK, seed=0)
    report.summary.append(
        f"synthetic world: {world.prompts} prompts, {world.images} new images, {world.tasks_created} new ranking "
        f"tasks, {simulated} new simulated rankings"
    )
    return report
