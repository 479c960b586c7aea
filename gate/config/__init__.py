"""The gate's TOML configuration: one frozen, validated pydantic model per concern (`model`), the camera's, the
venue's and monitoring's sections, and config errors as one short line per problem.
"""
