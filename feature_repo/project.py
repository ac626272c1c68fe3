"""The Feast project these objects belong to (its name comes from settings.feast.project)."""

from feast import Project

from feedrank.featurestore import repo_settings

# feedrank's features: one project per deployment.
project = Project(
    name=repo_settings().feast.project,
    description="Feed-ranking features: batch, streaming and request context.",
)
