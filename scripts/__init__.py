"""Developer scripts: the dev process runner, the dependency audit, the image entrypoint."""
