"""The registered chat model (an MLflow pyfunc logged from code) and the server that answers with the champion."""
