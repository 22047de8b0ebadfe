"""A local fake of Stripe's REST API, and webhook events signed the way Stripe signs them.

The official `stripe` SDK (and dj-stripe through it) talks to `FakeStripe.url` exactly as it
talks to api.stripe.com: form-encoded requests, `Authorization: Bearer sk_test_...`, JSON
objects shaped as in the pinned API version (2024-04-10: `invoice.subscription` and
`subscription.current_period_*` are top-level). Every request is recorded in `calls`.

State changes that happen on Stripe's side (a customer paying at Checkout, a renewal failing,
a cancellation) are methods here; each returns the webhook events Stripe would send, as
snapshots of the objects at that moment, so tests can deliver them in any order.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

API_VERSION = "2024-04-10"
DAY = 86_400


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header for `payload`: `t=<unix>,v1=HMAC-SHA256(secret, "<t>.<payload>")`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def form_decode(body: str) -> dict:
    """Stripe's form encoding (`a[b][0][c]=v`) back into nested dicts and lists."""
    root: dict = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists(root)


def _lists(node):
    if not isinstance(node, dict):
        return node
    node = {key: _lists(value) for key, value in node.items()}
    if node and all(key.isdigit() for key in node):
        return [node[key] for key in sorted(node, key=int)]
    return node


@dataclass
class Call:
    method: str
    path: str
    params: dict
    headers: dict
    status: int = 0


class StripeError(Exception):
    def __init__(self, status: int, message: str, *, code: str = "", param: str = "",
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": kind, "message": message, "code": code, "param": param}}


@dataclass
class FakeStripe:
    account_id: str = "acct_fake"
    calls: list[Call] = field(default_factory=list)
    objects: dict[str, dict] = field(default_factory=dict)
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))
    _idempotent: dict[str, tuple[int, dict]] = field(default_factory=dict)
    _failures: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # Server

    def start(self) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                fake._serve(self, "GET")

            def do_POST(self):
                fake._serve(self, "POST")

            def do_DELETE(self):
                fake._serve(self, "DELETE")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-stripe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length).decode() if length else ""
        params = form_decode(body if method == "POST" else parts.query)
        headers = {key.lower(): value for key, value in handler.headers.items()}
        with self._lock:
            call = Call(method, parts.path, params, headers)
            self.calls.append(call)
            try:
                status, payload = self._answer(method, parts.path, params, headers)
            except StripeError as error:
                status, payload = error.status, error.body
            call.status = status
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Request-Id", f"req_{secrets.token_hex(7)}")
        handler.send_header("Stripe-Version", headers.get("stripe-version", API_VERSION))
        handler.end_headers()
        handler.wfile.write(data)

    def fail_next(self, method: str, path: str, *, times: int = 1, status: int = 500) -> None:
        """Answer the next `times` calls to `method path` with a Stripe API error (an outage)."""
        self._failures[(method, path)] = [status] * times

    def _answer(self, method: str, path: str, params: dict, headers: dict) -> tuple[int, dict]:
        failures = self._failures.get((method, path))
        if failures:
            raise StripeError(failures.pop(), "Stripe is having a moment.", kind="api_error")
        if not re.fullmatch(r"Bearer (sk|rk)_test_\w+", headers.get("authorization", "")):
            raise StripeError(401, "Invalid API Key provided.", kind="invalid_request_error")
        key = headers.get("idempotency-key")
        if method == "POST" and key and key in self._idempotent:
            return self._idempotent[key]
        for pattern, verb, handler in self._routes():
            match = re.fullmatch(pattern, path)
            if match and verb == method:
                answer = 200, handler(params, **match.groupdict())
                if method == "POST" and key:
                    self._idempotent[key] = answer
                return answer
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")

    def _routes(self):
        return [
            (r"/v1/account", "GET", lambda params: self._account()),
            (r"/v1/customers", "POST", self._customer_create),
            (r"/v1/customers/(?P<id>[\w]+)", "GET", lambda params, id: self.get("customer", id)),
            (r"/v1/customers/(?P<id>[\w]+)", "POST", self._customer_update),
            (r"/v1/checkout/sessions", "POST", self._checkout_session_create),
            (r"/v1/checkout/sessions/(?P<id>[\w]+)", "GET",
             lambda params, id: self._public(self.get("checkout.session", id))),
            (r"/v1/billing_portal/sessions", "POST", self._portal_session_create),
            (r"/v1/subscriptions/(?P<id>[\w]+)", "GET", lambda params, id: self.get("subscription", id)),
            (r"/v1/invoices/(?P<id>[\w]+)", "GET", lambda params, id: self.get("invoice", id)),
            (r"/v1/prices/(?P<id>[\w]+)", "GET", lambda params, id: self.get("price", id)),
            (r"/v1/products/(?P<id>[\w]+)", "GET", lambda params, id: self.get("product", id)),
            (r"/v1/products/(?P<id>[\w]+)/features", "GET", self._product_features),
            (r"/v1/payment_intents/(?P<id>[\w]+)", "GET", lambda params, id: self.get("payment_intent", id)),
            (r"/v1/webhook_endpoints", "POST", self._webhook_endpoint_create),
            (r"/v1/webhook_endpoints/(?P<id>[\w]+)", "GET", lambda params, id: self.get("webhook_endpoint", id)),
            (r"/v1/billing/meter_events", "POST", self._meter_event_create),
        ]

    # Objects

    def _id(self, prefix: str) -> str:
        return f"{prefix}_test_{next(self._counter):04d}{secrets.token_hex(4)}"

    def _store(self, obj: dict) -> dict:
        self.objects.setdefault(obj["object"], {})[obj["id"]] = obj
        return obj

    def get(self, kind: str, id: str) -> dict:
        obj = self.objects.get(kind, {}).get(id)
        if obj is None:
            raise StripeError(404, f"No such {kind.split('.')[-1]}: '{id}'", code="resource_missing", param="id")
        return obj

    def find(self, kind: str, **fields) -> list[dict]:
        return [obj for obj in self.objects.get(kind, {}).values()
                if all(obj.get(name) == value for name, value in fields.items())]

    def calls_to(self, method: str, path: str) -> list[Call]:
        return [call for call in self.calls if call.method == method and call.path == path]

    def _base(self, prefix: str, kind: str, **fields) -> dict:
        return {"id": self._id(prefix), "object": kind, "created": int(time.time()), "livemode": False,
                "metadata": {}, **fields}

    def _account(self) -> dict:
        return {"id": self.account_id, "object": "account", "business_profile": {"name": "Prumo (fake)"},
                "charges_enabled": True, "country": "US", "default_currency": "usd", "details_submitted": True,
                "email": "billing@prumo.local", "payouts_enabled": True, "settings": {"branding": {}},
                "type": "standard", "created": 1_700_000_000}

    def price_add(self, id: str, *, unit_amount: int, name: str, currency: str = "usd") -> dict:
        """A recurring monthly price (and its product), as created in the Stripe dashboard."""
        product = self._store(self._base("prod", "product", name=name, active=True, type="service",
                                         description=None, default_price=id, images=[], url=None))
        return self._store({
            "id": id, "object": "price", "active": True, "billing_scheme": "per_unit", "created": int(time.time()),
            "currency": currency, "livemode": False, "lookup_key": None, "metadata": {}, "nickname": name,
            "product": product["id"], "recurring": {"interval": "month", "interval_count": 1,
                                                    "usage_type": "licensed", "aggregate_usage": None},
            "tax_behavior": "unspecified", "tiers_mode": None, "transform_quantity": None, "type": "recurring",
            "unit_amount": unit_amount, "unit_amount_decimal": str(unit_amount),
        })

    def unrecognized(self) -> list[str]:
        """Requests the fake does not implement (so tests notice when our code or dj-stripe needs more)."""
        return [f"{call.method} {call.path}" for call in self.calls
                if call.status == 404 and not self._routed(call.method, call.path)]

    def _routed(self, method: str, path: str) -> bool:
        return any(re.fullmatch(pattern, path) and verb == method for pattern, verb, _handler in self._routes())

    def _product_features(self, params: dict, id: str) -> dict:
        self.get("product", id)
        return {"object": "list", "data": [], "has_more": False, "url": f"/v1/products/{id}/features"}

    def _customer_create(self, params: dict) -> dict:
        return self._store(self._base(
            "cus", "customer", email=params.get("email"), name=params.get("name"),
            description=params.get("description"), metadata=params.get("metadata", {}), balance=0,
            currency=None, default_source=None, delinquent=False, discount=None,
            invoice_settings={"custom_fields": None, "default_payment_method": None, "footer": None},
            address=None, phone=None, preferred_locales=[], tax_exempt="none", test_clock=None,
        ))

    def _customer_update(self, params: dict, id: str) -> dict:
        customer = self.get("customer", id)
        customer["metadata"] = {**customer["metadata"], **params.pop("metadata", {})}
        customer.update(params)
        return customer

    def _checkout_session_create(self, params: dict) -> dict:
        customer = self.get("customer", params["customer"]) if params.get("customer") else None
        mode = params.get("mode")
        if mode not in ("payment", "subscription", "setup"):
            raise StripeError(400, "Invalid mode: must be one of payment, setup, or subscription", param="mode")
        items, amount, currency = [], 0, "usd"
        for index, line in enumerate(params.get("line_items", [])):
            quantity = int(line.get("quantity", 1))
            if "price" in line:
                price = self.get("price", line["price"])
            elif "price_data" in line:
                data = line["price_data"]
                price = {"id": self._id("price"), "unit_amount": int(data["unit_amount"]),
                         "currency": data["currency"], "product_data": data.get("product_data", {})}
            else:
                raise StripeError(400, "Missing required param: line_items[0][price].", param=f"line_items[{index}]")
            if mode == "subscription" and price.get("type") != "recurring":
                raise StripeError(400, "You must provide at least one recurring price in `subscription` mode.")
            items.append({"price": price, "quantity": quantity})
            amount += price["unit_amount"] * quantity
            currency = price["currency"]
        if not items:
            raise StripeError(400, "Missing required param: line_items.", param="line_items")
        session = self._base(
            "cs", "checkout.session", mode=mode, status="open", payment_status="unpaid",
            customer=customer["id"] if customer else None, customer_email=None,
            client_reference_id=params.get("client_reference_id"), metadata=params.get("metadata", {}),
            success_url=params.get("success_url"), cancel_url=params.get("cancel_url"),
            amount_subtotal=amount, amount_total=amount, currency=currency, expires_at=int(time.time()) + DAY,
            payment_intent=None, setup_intent=None, subscription=None, invoice=None, locale=None,
            payment_method_types=["card"], total_details={"amount_discount": 0, "amount_shipping": 0,
                                                          "amount_tax": 0},
        )
        session["url"] = f"https://checkout.stripe.com/c/pay/{session['id']}"
        session["_items"] = items
        session["_subscription_metadata"] = params.get("subscription_data", {}).get("metadata", {})
        session["_payment_intent_metadata"] = params.get("payment_intent_data", {}).get("metadata", {})
        self._store(session)
        return self._public(session)

    def _portal_session_create(self, params: dict) -> dict:
        self.get("customer", params["customer"])
        flow = params.get("flow_data")
        if flow and flow.get("type") in ("subscription_update_confirm", "subscription_cancel"):
            self.get("subscription", flow[flow["type"]]["subscription"])
        session = self._base("bps", "billing_portal.session", customer=params["customer"],
                             return_url=params.get("return_url"), flow=flow, configuration="bpc_fake", locale=None,
                             on_behalf_of=None)
        session["url"] = f"https://billing.stripe.com/p/session/{session['id']}"
        return self._store(session)

    def _webhook_endpoint_create(self, params: dict) -> dict:
        return self._store(self._base(
            "we", "webhook_endpoint", url=params["url"], api_version=params.get("api_version") or None,
            enabled_events=params.get("enabled_events", ["*"]), metadata=params.get("metadata", {}),
            secret=f"whsec_{secrets.token_hex(16)}", status="enabled", application=None, description=None,
        ))

    def _meter_event_create(self, params: dict) -> dict:
        for name in ("event_name", "payload"):
            if name not in params:
                raise StripeError(400, f"Missing required param: {name}.", param=name)
        identifier = params.get("identifier") or self._id("mev")
        if any(event["identifier"] == identifier for event in self.objects.get("billing.meter_event", {}).values()):
            raise StripeError(400, f"An event already exists with identifier {identifier}.",
                              code="duplicate_meter_event")
        event = {"object": "billing.meter_event", "id": identifier, "identifier": identifier,
                 "event_name": params["event_name"], "payload": params["payload"], "livemode": False,
                 "created": int(time.time()), "timestamp": int(params.get("timestamp") or time.time())}
        return self._store(event)

    @staticmethod
    def _public(obj: dict) -> dict:
        return {key: value for key, value in obj.items() if not key.startswith("_")}

    # What happens on Stripe's side. Each returns the events Stripe sends (snapshots).

    def event(self, type: str, obj: dict, previous_attributes: dict | None = None) -> dict:
        data = {"object": copy.deepcopy(self._public(obj))}
        if previous_attributes is not None:
            data["previous_attributes"] = previous_attributes
        return {"id": self._id("evt"), "object": "event", "api_version": API_VERSION, "created": int(time.time()),
                "data": data, "livemode": False, "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None}, "type": type}

    def checkout_complete(self, session_id: str) -> list[dict]:
        """The customer pays at Checkout."""
        with self._lock:
            session = self.get("checkout.session", session_id)
            events = []
            if session["mode"] == "payment":
                intent = self._store(self._base(
                    "pi", "payment_intent", amount=session["amount_total"], amount_received=session["amount_total"],
                    currency=session["currency"], customer=session["customer"], status="succeeded",
                    metadata=session["_payment_intent_metadata"], payment_method=None, on_behalf_of=None,
                    invoice=None, latest_charge=None, capture_method="automatic", confirmation_method="automatic",
                    payment_method_types=["card"], description=None, receipt_email=None,
                ))
                session.update(payment_intent=intent["id"])
            else:
                item = session["_items"][0]
                subscription = self._subscription_create(customer=session["customer"], price=item["price"],
                                                         metadata=session["_subscription_metadata"])
                invoice = self._invoice_create(subscription, status="paid", billing_reason="subscription_create")
                session.update(subscription=subscription["id"], invoice=invoice["id"])
                events += [self.event("customer.subscription.created", subscription),
                           self.event("invoice.paid", invoice)]
            session.update(status="complete", payment_status="paid")
            return [*events, self.event("checkout.session.completed", session)]

    def _subscription_create(self, *, customer: str, price: dict, metadata: dict) -> dict:
        now = int(time.time())
        subscription = self._base(
            "sub", "subscription", customer=customer, status="active", metadata=dict(metadata),
            start_date=now, current_period_start=now, current_period_end=now + 30 * DAY,
            billing_cycle_anchor=now, cancel_at=None, cancel_at_period_end=False, canceled_at=None, ended_at=None,
            collection_method="charge_automatically", default_payment_method=None, default_source=None,
            default_tax_rates=[], discount=None, latest_invoice=None, pause_collection=None, schedule=None,
            test_clock=None, trial_end=None, trial_start=None, quantity=1,
        )
        subscription["items"] = {"object": "list", "data": [], "has_more": False,
                                 "url": f"/v1/subscription_items?subscription={subscription['id']}"}
        self._store(subscription)
        self._subscription_price_set(subscription, price)
        return subscription

    def _subscription_price_set(self, subscription: dict, price: dict) -> None:
        item = {"id": self._id("si"), "object": "subscription_item", "created": int(time.time()), "metadata": {},
                "price": copy.deepcopy(price), "quantity": 1, "subscription": subscription["id"],
                "billing_thresholds": None, "tax_rates": []}
        subscription["items"]["data"] = [item]
        subscription["plan"] = None

    def _invoice_create(self, subscription: dict, *, status: str, billing_reason: str) -> dict:
        price = subscription["items"]["data"][0]["price"]
        amount = price["unit_amount"]
        paid = status == "paid"
        number = f"FAKE-{len(self.objects.get('invoice', {})) + 1:04d}"
        invoice = self._store(self._base(
            "in", "invoice", customer=subscription["customer"], subscription=subscription["id"], status=status,
            paid=paid, amount_due=amount, amount_paid=amount if paid else 0, amount_remaining=0 if paid else amount,
            subtotal=amount, total=amount, tax=None, currency=price["currency"], number=number,
            billing_reason=billing_reason, attempt_count=1, attempted=True, charge=None, payment_intent=None,
            default_payment_method=None, discounts=[], due_date=None, footer=None,
            hosted_invoice_url=f"https://invoice.stripe.com/i/{number}",
            invoice_pdf=f"https://pay.stripe.com/invoice/{number}/pdf",
            period_start=subscription["current_period_start"], period_end=subscription["current_period_end"],
            next_payment_attempt=None if paid else int(time.time()) + 3 * DAY, receipt_number=None,
            lines={"object": "list", "data": [], "has_more": False, "url": "/v1/invoices/lines"},
            status_transitions={"finalized_at": int(time.time()), "paid_at": int(time.time()) if paid else None},
        ))
        subscription["latest_invoice"] = invoice["id"]
        return invoice

    def subscription_price_change(self, subscription_id: str, price_id: str) -> dict:
        """The customer switches plans in the Customer Portal."""
        with self._lock:
            subscription = self.get("subscription", subscription_id)
            previous = {"items": copy.deepcopy(subscription["items"])}
            self._subscription_price_set(subscription, self.get("price", price_id))
            return self.event("customer.subscription.updated", subscription, previous)

    def subscription_cancel(self, subscription_id: str) -> dict:
        with self._lock:
            subscription = self.get("subscription", subscription_id)
            now = int(time.time())
            subscription.update(status="canceled", canceled_at=now, ended_at=now)
            return self.event("customer.subscription.deleted", subscription)

    def renewal_fail(self, subscription_id: str, *, at: int | None = None) -> list[dict]:
        """The renewal charge fails: an open invoice, and the subscription goes past_due."""
        with self._lock:
            subscription = self.get("subscription", subscription_id)
            start = at or int(time.time())
            previous = {"status": subscription["status"], "current_period_start": subscription["current_period_start"]}
            subscription.update(status="past_due", current_period_start=start, current_period_end=start + 30 * DAY)
            invoice = self._invoice_create(subscription, status="open", billing_reason="subscription_cycle")
            return [self.event("invoice.payment_failed", invoice),
                    self.event("customer.subscription.updated", subscription, previous)]

    def invoice_pay(self, invoice_id: str) -> list[dict]:
        """A retry succeeds (or the customer pays with a new card)."""
        with self._lock:
            invoice = self.get("invoice", invoice_id)
            invoice.update(status="paid", paid=True, amount_paid=invoice["amount_due"], amount_remaining=0,
                           next_payment_attempt=None)
            subscription = self.get("subscription", invoice["subscription"])
            subscription.update(status="active")
            return [self.event("invoice.paid", invoice),
                    self.event("customer.subscription.updated", subscription, {"status": "past_due"})]


def fake_stripe_start() -> FakeStripe:
    return FakeStripe().start()
