import os

from django.core.wsgi import get_wsgi_application

from core.tracing import tracing_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
tracing_init(service="prumo-web")
application = get_wsgi_application()
