"""The Vowpal Wabbit adapter: the only place that knows VW's formats and library."""
