"""CLI commands that write deployment files: ``stafet deploy strimzi`` (Kubernetes + Strimzi)."""

from __future__ import annotations

from pathlib import Path

import click

from stafet.config import get_settings


@click.group()
def deploy() -> None:
    """Deployment files generated from the topic and ACL plans (docs/deploy.md)."""


@deploy.command("strimzi")
@click.option(
    "--out",
    "out",
    default="deploy/k8s",
    show_default=True,
    help="directory for kafka.yaml, topics.yaml, users.yaml, workloads.yaml; "
    "'-' prints every resource to stdout",
)
@click.option("--namespace", default="stafet", show_default=True)
@click.option(
    "--image",
    default="stafet:0.1.0",
    show_default=True,
    help="the image built from deploy/Dockerfile",
)
@click.option(
    "--cluster", default="stafet", show_default=True, help="the name of the Strimzi Kafka resource"
)
def deploy_strimzi(out: str, namespace: str, image: str, cluster: str) -> None:
    """Strimzi Kafka, KafkaTopics, KafkaUsers and the stafet workloads as YAML (the topics
    and users from the plans `stafet topics` and `stafet kafka provision` use)."""
    from stafet.deploy_manifests import Target, manifests, render

    files = manifests(get_settings(), Target(namespace=namespace, image=image, cluster=cluster))
    if out == "-":
        click.echo(render(r for resources in files.values() for r in resources), nl=False)
        return
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    for name, resources in files.items():
        (directory / name).write_text(render(resources), encoding="utf-8")
        click.echo(f"{directory / name}: {len(resources)} resources")


def register(main: click.Group) -> None:
    main.add_command(deploy)
