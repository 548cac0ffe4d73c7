"""Log-in and token-creation throttles (H2, M1): shared by every web process, keyed on the
account and the trusted client address, a progressive delay that never locks out the right
password for longer than the current wait, on the admin's log-in too."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client, RequestFactory

from labelapp import throttle
from labelapp.services.tokens import api_token_create
from tests.conftest import make_user
from tests.webclient import Gunicorn, PageClient, database_url

PROXY = "10.0.0.1"


@pytest.fixture(autouse=True)
def fresh_throttles(settings):
    settings.LOGIN_THROTTLE_ATTEMPTS = 3
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def clock(monkeypatch):
    """The throttle's clock, moved by hand."""
    now = [time.time()]
    monkeypatch.setattr(throttle.time, "time", lambda: now[0])
    return now


def post_login(client, username, password, path="/accounts/login/", address="203.0.113.5"):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=PROXY,
                       HTTP_X_FORWARDED_FOR=address)


@pytest.mark.django_db
def test_admin_login_is_throttled_and_the_right_password_works_after_the_wait(settings, clock):
    settings.TRUSTED_PROXY_COUNT = 1
    make_user("boss", is_staff=True, is_superuser=True)
    client = Client()
    codes = [post_login(client, "boss", "wrong", "/admin/login/").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    refused = post_login(client, "boss", "pw-boss", "/admin/login/")
    assert refused.status_code == 429 and refused["Retry-After"] == "1"  # the right password waits too …
    assert "try again in 1 second" in refused.content.decode() and "_auth_user_id" not in client.session
    clock[0] += 1.01  # … but only for the current wait: no lock-out
    ok = post_login(client, "boss", "pw-boss", "/admin/login/")
    assert ok.status_code == 302 and client.session["_auth_user_id"]
    client.logout()
    assert post_login(client, "boss", "wrong", "/admin/login/").status_code == 200  # the success cleared it


@pytest.mark.django_db
def test_the_wait_doubles_with_each_failure_up_to_the_cap(settings, clock):
    settings.LOGIN_THROTTLE_MAX_DELAY = 8
    make_user("slow")
    client = Client()
    waits = []
    for _ in range(8):
        response = post_login(client, "slow", "wrong")
        if response.status_code == 429:
            waits.append(int(response["Retry-After"]))
            clock[0] += waits[-1]  # wait as told, then fail again
            assert post_login(client, "slow", "wrong").status_code == 200
    assert waits[:5] == [1, 2, 4, 8, 8]


@pytest.mark.django_db
def test_bad_passwords_for_one_account_behind_one_proxy_do_not_lock_out_others(settings):
    settings.TRUSTED_PROXY_COUNT = 1
    settings.LOGIN_THROTTLE_ATTEMPTS = 10
    for name in ("alice", "bob"):
        make_user(name)
    attacker = Client()
    assert [post_login(attacker, "alice", f"guess{i}").status_code for i in range(10)] == [200] * 10
    assert post_login(attacker, "alice", "guess10").status_code == 429
    # a forged X-Forwarded-For does not move the attacker to a fresh bucket: the proxy's entry counts
    forged = attacker.post("/accounts/login/", {"username": "alice", "password": "x"}, REMOTE_ADDR=PROXY,
                           HTTP_X_FORWARDED_FOR="198.51.100.7, 203.0.113.5")
    assert forged.status_code == 429
    # another account from the same client address and proxy, and alice from her own address: fine
    assert post_login(Client(), "bob", "pw-bob").status_code == 302
    assert post_login(Client(), "alice", "pw-alice", address="203.0.113.99").status_code == 302


def test_client_address_trusts_only_what_the_proxies_appended(settings):
    factory = RequestFactory()

    def address(count, remote="10.0.0.1", header=None):
        settings.TRUSTED_PROXY_COUNT = count
        meta = {"REMOTE_ADDR": remote}
        if header is not None:
            meta["HTTP_X_FORWARDED_FOR"] = header
        return throttle.client_address(factory.get("/", **meta))

    assert address(0, header="1.2.3.4") == "10.0.0.1"  # no proxy configured: the header is the client's
    assert address(1, header="1.2.3.4") == "1.2.3.4"
    assert address(1, header="6.6.6.6, 1.2.3.4") == "1.2.3.4"  # the left entry was written by the client
    assert address(2, header="6.6.6.6, 1.2.3.4, 172.16.0.9") == "1.2.3.4"
    assert address(2, header="1.2.3.4") == "10.0.0.1"  # fewer entries than proxies: not through them
    assert address(1, header="not-an-address") == "10.0.0.1"
    assert address(1, header="2001:db8::1") == "2001:db8::1"
    settings.TRUSTED_PROXY_HEADER = "HTTP_X_REAL_IP"
    settings.TRUSTED_PROXY_COUNT = 1
    assert throttle.client_address(factory.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_REAL_IP="5.6.7.8")) == "5.6.7.8"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("backend", ["redis", "database"])
def test_a_burst_of_parallel_guesses_gets_no_more_through_than_a_sequence(settings, backend):
    if backend == "database":
        settings.CACHES = {"default": {"BACKEND": "labelapp.cache.AtomicDatabaseCache", "LOCATION": "studio_cache"}}
    elif "Redis" not in settings.CACHES["default"]["BACKEND"]:
        pytest.skip("needs REDIS_URL")
    if connection.vendor != "postgresql":
        pytest.skip("parallel requests need PostgreSQL")
    make_user("burst")
    # the throttle alone, with the password check replaced by a slow failure: 20 at once
    checked = []

    def view(request):
        checked.append(1)
        time.sleep(0.2)
        from django.http import HttpResponse

        return HttpResponse("wrong password", status=200)

    guarded = throttle.throttled_login(view)
    factory = RequestFactory()

    def attempt(_):
        request = factory.post("/accounts/login/", {"username": "burst", "password": "x"}, REMOTE_ADDR="192.0.2.1")
        from django.contrib.auth.models import AnonymousUser

        request.user = AnonymousUser()
        return guarded(request).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(attempt, range(20)))
    assert len(checked) == codes.count(200) <= settings.LOGIN_THROTTLE_ATTEMPTS + 1
    assert codes.count(429) >= 20 - settings.LOGIN_THROTTLE_ATTEMPTS - 1


@pytest.mark.django_db
def test_an_unreachable_cache_lets_people_log_in(monkeypatch):
    make_user("calm")

    def down(*args, **kwargs):
        raise ConnectionError("cache is down")

    monkeypatch.setattr(throttle.cache, "get", down)
    monkeypatch.setattr(throttle.cache, "add", down)
    assert post_login(Client(), "calm", "pw-calm").status_code == 302


# ---- across processes: two gunicorn workers -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("backend", ["redis", "database"])
def test_throttles_hold_across_two_gunicorn_workers(backend, tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("gunicorn workers need the shared PostgreSQL test database")
    user = make_user("target")
    _, key = api_token_create(user=user, name="first")
    env = {"DATABASE_URL": database_url(connection.settings_dict), "DEBUG": "0", "TRUSTED_PROXY_COUNT": "1",
           "LOGIN_THROTTLE_ATTEMPTS": "10", "THROTTLE_TOKEN_CREATE": "6/hour", "LOG_LEVEL": "ERROR"}
    unset = ("REDIS_URL",) if backend == "database" else ()
    log_format = "%(p)s %(m)s %(U)s %(s)s"
    with Gunicorn(workers=2, env=env, data_dir=str(tmp_path), unset=unset,
                  extra=["--access-logfile", "-", "--access-logformat", log_format]) as server:
        clients = [PageClient(server.url, forwarded_for="203.0.113.5") for _ in range(2)]
        for c in clients:
            c.request("/accounts/login/")
        barrier = threading.Barrier(2)

        def fail(c):  # two at once: a sync worker serves one request at a time, so both workers serve
            barrier.wait()
            return c.request("/accounts/login/", {"username": "target", "password": "wrong",
                                                  "csrfmiddlewaretoken": c.csrf()}).status
        codes = []
        with ThreadPoolExecutor(2) as pool:
            for _ in range(5):
                codes += list(pool.map(fail, clients))
        assert codes == [200] * 10
        eleventh = clients[0].request("/accounts/login/", {"username": "target", "password": "pw-target",
                                                           "csrfmiddlewaretoken": clients[0].csrf()})
        assert eleventh.status == 429 and eleventh.retry_after == "1"
        other = PageClient(server.url, forwarded_for="203.0.113.5")
        assert other.login(make_user_in_process("bystander"), "pw-bystander").status == 302

        auth = {"Authorization": f"Token {key}"}
        made = []
        with ThreadPoolExecutor(2) as pool:
            for _ in range(4):
                made += list(pool.map(lambda i: clients[i].request("/api/v1/tokens/", headers=auth,
                                                                   json_body={"name": "n"}).status, range(2)))
        assert made.count(201) == 6 and made.count(429) == 2, made  # 6/hour over both workers, not 6 each
    pids = {line.split()[0] for line in server.log.read_text().splitlines() if " POST /accounts/login/ " in line}
    assert len(pids) == 2, "both workers should have served log-ins"


def make_user_in_process(name: str) -> str:
    make_user(name)
    return name
