"""Streamlit UI of the readmission API.

    API_URL=http://127.0.0.1:8000 streamlit run server3-serving/ui/app.py

The logic lives in ``readmit_ui`` beside this file (this folder is not an installed package).
"""

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from readmit_ui.page import main  # noqa: E402 - after the path set-up

main()
