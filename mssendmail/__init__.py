"""mssendmail: a sendmail drop-in that delivers through Microsoft Graph."""

__version__ = "0.1.0"
