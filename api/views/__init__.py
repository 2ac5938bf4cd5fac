"""The API's views, one module per resource. Thin, like the pages: parse with a serializer,
get objects and querysets from :mod:`disclosure.policy`, call one action, present the result.

SECURITY: forbidden and missing look the same (404, via the policy's ``get_*_or_404``); a
refusal of something the user can see but may not change is a 404 too, as on the pages. Every
answer is ``Cache-Control: no-store`` because most hold restricted content.
"""
