"""`credits.low` from the /v1 gateway, run in this process (tests/test_v1_inprocess.py's harness): the crossing is
seen in the settlement's own answer, so a call that does not cross still takes two database round trips, and the
call that crosses writes one event (after its settlement, in a transaction of its own)."""

from __future__ import annotations

from django_tenants.utils import schema_context

from billing.models import BillingAccount
from tenants.audit.services import Actor
from webhooks.models import WebhookMessage
from webhooks.services import webhook_endpoint_create

from .security.inprocess_v1 import CountingConnection, run
from .test_v1_inprocess import CHEAP, api_org, gateway_settings, round_trips, sdk, upstream  # noqa: F401 (fixtures)
from .webhook_receiver import Receiver


def test_the_gateway_call_that_crosses_the_threshold_sends_credits_low_once(  # noqa: F811 (fixtures)
        gateway_settings, api_org, django_db_blocker):  # noqa: F811
    org, key = api_org
    messages = [{"role": "user", "content": "Spend a little"}]
    with django_db_blocker.unblock(), Receiver() as receiver:
        webhook_endpoint_create(organization=org, actor=Actor.system("tests"), url=receiver.url(),
                                event_types=["credits.low"])

    async def call():
        CountingConnection.log = []
        await sdk(key.raw).chat.completions.create(model=CHEAP, messages=messages)
        return CountingConnection.log

    def low_events() -> list[dict]:
        with schema_context(org.schema_name):
            return [m.payload["data"] for m in WebhookMessage.objects.filter(type="credits.low")]

    with django_db_blocker.unblock():
        run(call)  # warms the key cache and the snapshot
        balance = BillingAccount.objects.get(pk=org.pk).credits
        BillingAccount.objects.filter(pk=org.pk).update(credits_low_threshold=balance)  # the next call crosses
        run(call)
        after = BillingAccount.objects.get(pk=org.pk).credits
        assert after < balance
        assert low_events() == [{"balance": str(after), "threshold": str(balance), "previous_balance": str(balance)}]
        log = run(call)  # below already: no event, and still two round trips
        assert round_trips(log) == 2, log
        assert len(low_events()) == 1
