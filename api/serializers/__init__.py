"""Request and response shapes of the API, one module per resource (as the views). Serializers
only parse and present: querysets that limit what a field may refer to come from
:mod:`disclosure.policy` (set per request), and every change is made by an action called from
the view."""
