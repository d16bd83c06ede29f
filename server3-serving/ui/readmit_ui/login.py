"""The login in front of the page: one account (UI_USERNAME / UI_PASSWORD), kept in the session.

Both fields are compared as SHA-256 digests with ``hmac.compare_digest`` (no early exit on the
first differing character, no length leak), both always, so the time taken says nothing about
which field was wrong. A failed attempt waits ``FAILURE_DELAY_SECONDS`` before answering.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

import streamlit as st

from .settings import UISettings

log = logging.getLogger(__name__)

FAILURE_DELAY_SECONDS = 1.0
USER = "login:user"
"""Session key of the logged-in user's name."""
USERNAME_KEY, PASSWORD_KEY, FAILED = "login:username", "login:password", "login:failed"
WRONG = "Wrong username or password."


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def credentials_match(settings: UISettings, username: str, password: str) -> bool:
    expected_user = settings.ui_username or ""
    expected_password = settings.ui_password.get_secret_value() if settings.ui_password else ""
    user_ok = hmac.compare_digest(_digest(username), _digest(expected_user))
    password_ok = hmac.compare_digest(_digest(password), _digest(expected_password))
    return bool(expected_user) and bool(expected_password) and user_ok and password_ok


def logged_in() -> str | None:
    return st.session_state.get(USER)


def _attempt(settings: UISettings) -> None:
    """The form's callback (runs before the page): check, remember the user or the failure, forget the
    password typed either way (it never stays in the session)."""
    username = st.session_state.get(USERNAME_KEY) or ""
    password = st.session_state.get(PASSWORD_KEY) or ""
    st.session_state[PASSWORD_KEY] = ""
    if credentials_match(settings, username, password):
        st.session_state[USER] = username
        st.session_state[USERNAME_KEY] = ""
        log.info("UI login: %s", username)
        return
    log.warning("UI login refused")
    time.sleep(FAILURE_DELAY_SECONDS)
    st.session_state[FAILED] = True


def login_form(settings: UISettings) -> None:
    """The form; on success the session remembers the user and the page shows at once."""
    st.title("30-day readmission risk")
    st.caption("Log in to use the prediction service.")
    with st.form("login", clear_on_submit=True):
        st.text_input("Username", key=USERNAME_KEY, autocomplete="username")
        st.text_input("Password", type="password", key=PASSWORD_KEY, autocomplete="current-password")
        st.form_submit_button("Log in", type="primary", key="login", on_click=_attempt, args=(settings,))
    if st.session_state.pop(FAILED, False):
        st.error(WRONG)


def _logout() -> None:
    for name in list(st.session_state):  # the login and everything shown since (patient data included)
        del st.session_state[name]


def logout_button() -> None:
    with st.sidebar:
        st.caption(f"Logged in as **{logged_in()}**")
        st.button("Log out", key="logout", on_click=_logout)
