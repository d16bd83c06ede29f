"""The login in front of Locust's web UI (``--web-login``), one operator from LOCUST_USERNAME / LOCUST_PASSWORD.

Locust's ``--web-login`` puts every page and action of the web UI behind Flask-Login and shows its
login form, but leaves the checking to the locustfile
(https://docs.locust.io/en/stable/extending-locust.html#authentication). Here:

- the form posts to ``<web base path>/login_submit``; username and password are compared in
  constant time (SHA-256 digests through ``hmac.compare_digest``, both always compared); a refused
  attempt waits a second (a gevent sleep: other requests go on) and is logged without what was typed;
- the Flask-Login user loader only accepts the configured username;
- the session cookie is signed with a key drawn at start (a restart logs everyone out), HttpOnly,
  SameSite=Lax (no cross-site POST to /swarm or /stop), valid 12 hours, and Secure when the page
  came over HTTPS: Locust's own TLS, or the ingress' (``X-Forwarded-Proto: https``);
- ``<web base path>/logout`` ends the session.

A web UI never starts open: without ``--web-login``, or without a usable LOCUST_USERNAME /
LOCUST_PASSWORD, ``protect`` raises WebLoginError (the locustfile exits with its message).
Headless runs and workers have no web UI and need no login.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import timedelta
from typing import Any

import gevent
from flask import Blueprint, Flask, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_login import UserMixin, login_user, logout_user

from loadtest_settings import LoadTestSettings

log = logging.getLogger(__name__)

FAILED_LOGIN_DELAY_SECONDS = 1.0
SESSION_LIFETIME = timedelta(hours=12)
LOGIN_REFUSED = "Invalid username or password"


class WebLoginError(RuntimeError):
    """The web UI cannot be protected as configured; Locust must not start it."""


class Operator(UserMixin):
    def __init__(self, username: str) -> None:
        self.id = username


class _SessionCookies(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, Secure whenever the browser is on HTTPS (TLS ended by the ingress too)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return super().get_cookie_secure(app) or request.is_secure or forwarded == "https"


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class Credentials:
    """The one username/password of the web UI (kept as digests, compared in constant time)."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._username = _digest(username)
        self._password = _digest(password)

    def is_user(self, username: str) -> bool:
        return hmac.compare_digest(_digest(username), self._username)

    def check(self, username: str, password: str) -> bool:
        user_ok = self.is_user(username)
        password_ok = hmac.compare_digest(_digest(password), self._password)
        return user_ok and password_ok  # both digests compared whatever the username


def protect(environment: Any, settings: LoadTestSettings) -> None:
    """Set up the login of the web UI, if there is one (call from the init event, before the UI starts)."""
    web_ui = environment.web_ui
    if web_ui is None:  # --headless, or a worker
        return
    if not web_ui.web_login:
        raise WebLoginError("the web UI does not run without a login: start Locust with --web-login "
                            "(or LOCUST_WEB_LOGIN=true) and LOCUST_USERNAME / LOCUST_PASSWORD, or with --headless")
    problem = settings.web_login_problem()
    if problem is not None:
        raise WebLoginError(f"{problem} (--web-login)")
    assert settings.web_username is not None and settings.web_password is not None
    options = environment.parsed_options
    install(web_ui, Credentials(settings.web_username.strip(), settings.web_password.get_secret_value()),
            base_path=getattr(options, "web_base_path", "") or "",
            tls=bool(getattr(options, "tls_cert", "") and getattr(options, "tls_key", "")))


def install(web_ui: Any, credentials: Credentials, base_path: str = "", tls: bool = False) -> None:
    app = web_ui.app
    app.config.update(SECRET_KEY=secrets.token_hex(32), SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=tls,
                      PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME, REMEMBER_COOKIE_HTTPONLY=True)
    app.session_interface = _SessionCookies()

    @web_ui.login_manager.user_loader
    def load_operator(user_id: str) -> Operator | None:
        return Operator(credentials.username) if credentials.is_user(user_id) else None

    web_ui.auth_args = {"username_password_callback": f"{base_path}/login_submit"}
    blueprint = Blueprint("readmit_web_login", __name__, url_prefix=base_path or None)

    @blueprint.route("/login_submit", methods=["POST"])
    def login_submit() -> Any:
        if credentials.check(request.form.get("username", ""), request.form.get("password", "")):
            session.clear()
            session.permanent = True
            login_user(Operator(credentials.username))
            log.info("web UI: %s logged in from %s", credentials.username, request.remote_addr)
            return redirect(url_for("locust.index"))
        gevent.sleep(FAILED_LOGIN_DELAY_SECONDS)
        log.warning("web UI: login refused (from %s)", request.remote_addr)
        session["auth_error"] = LOGIN_REFUSED
        return redirect(url_for("locust.login"))

    @blueprint.route("/logout")
    def logout() -> Any:
        logout_user()
        session.clear()
        return redirect(url_for("locust.login"))

    app.register_blueprint(blueprint)
