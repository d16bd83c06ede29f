"""The Streamlit UI of the readmission API: contract-generated form, CSV batch scoring.

Talks only to the API (``API_URL``). ``app.py`` beside this package is the entry point.
"""
