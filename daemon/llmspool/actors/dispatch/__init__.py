"""The dispatcher's parts (the actor itself is ``llmspool.actors.dispatcher``), each a plain
object the dispatcher makes once and owns, in the order a call goes through them:

- ``flex``: the flex policy (retries on *no capacity*, escalation in time, the fall back to
  standard) and the flex counters;
- ``attempts``: a call's attempts under the retry policy, sharing the call's time; each one
  routed, rate-limited, traced and told to its breaker;
- ``targets``: where an attempt goes past open circuit breakers (a slower tier, the failover
  provider, or a 503), and the breakers' transitions, log and metrics;
- ``relay``: one upstream request, and its answer or stream relayed to the caller;
- ``accounts``: each call's money: its reservation at admission, usage estimates, the
  ``Settled`` it is billed by, and what was served.
"""
