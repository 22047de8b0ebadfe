from .base import *  # noqa: F403

DEBUG = True
# Endpoints may be http while developing (a local receiver also needs WEBHOOKS_ALLOWED_PRIVATE_NETWORKS);
# production requires https.
WEBHOOKS_ALLOW_HTTP = True
