"""The gateway's web pages: homeowner accounts with TOTP, device pairing by QR,
the household and operator views (docs/homeowner.md, docs/operator.md).

Starlette + Jinja2, server-rendered; ``readmodel/`` gathers what the pages show.
"""
