-- Subscriptions from SQL (README "Subscriptions from SQL"): a pull-wake
-- subscription watched by a worker, and the errors the wrappers raise.
-- Timestamps, tokens and wake ids are random: only stable fields are shown.
SELECT created FROM ds.create('jobs/wake', 'application/json');
SELECT created FROM ds.create('orders/eu', 'application/json');

SELECT ds.subscription_put('order-workers', '{
    "type": "pull-wake",
    "pattern": "orders/*",
    "wake_stream": "jobs/wake",
    "lease_ttl_ms": 30000
}') -> 'subscription' -> 'streams';

-- Appends are pending work: the next tick (every pass of the maintenance
-- worker, or the sidecar) appends a wake event to the wake stream. (One
-- transaction here only so that the worker's own tick cannot come first.)
BEGIN;
SELECT ds.append('orders/eu', '{"order": 1}'::jsonb);
SELECT ds.subscription_tick(100);
COMMIT;
SELECT convert_from(data, 'UTF8')::jsonb - 'ts' AS wake_event FROM ds.read('jobs/wake');

-- A worker claims the wake, processes the streams, acknowledges.
CREATE TEMP TABLE claim AS SELECT ds.subscription_claim('order-workers', 'worker-1') AS c;
SELECT c -> 'generation' AS generation, c -> 'streams' AS streams FROM claim;
SELECT ds.subscription_claim('order-workers', 'worker-2');
SELECT ds.subscription_ack('order-workers', c ->> 'token', jsonb_build_object(
           'wake_id', c -> 'wake_id', 'generation', c -> 'generation',
           'acks', jsonb_build_array(jsonb_build_object('stream', 'orders/eu', 'offset', '0000000000000000_0000000000000011')),
           'done', true))
FROM claim;
-- The same wake again: fenced.
SELECT ds.subscription_ack('order-workers', c ->> 'token', jsonb_build_object(
           'wake_id', c -> 'wake_id', 'generation', c -> 'generation', 'done', true))
FROM claim;
SELECT ds.subscription_claim('order-workers', 'worker-1');

-- Membership: explicit streams beside the pattern.
SELECT ds.subscription_add_streams('order-workers', ARRAY['audit/log']);
SELECT ds.subscription_get('order-workers') -> 'subscription' -> 'streams';
SELECT ds.subscription_remove_stream('order-workers', 'audit/log');

-- The try_ functions return errors as data instead of raising.
SELECT ds.try_subscription_put('hook', '{"type": "webhook", "pattern": "orders/*",
                                         "webhook": {"url": "http://10.0.0.1/hook"}}');
SELECT ds.subscription_put('hook', '{"type": "webhook", "pattern": "orders/*",
                                     "webhook": {"url": "https://169.254.169.254/"}}');
SELECT ds.subscription_get('missing');

SELECT ds.subscription_delete('order-workers');
SELECT ds.subscription_delete('order-workers');

-- A configuration or acknowledgement nested deeper than the JSON parser
-- takes is an invalid request, not an internal error.
SELECT ds.try_subscription_put('deep', ('{"type": "pull-wake", "streams": '
                               || repeat('[', 200) || repeat(']', 200) || '}')::jsonb);
SELECT ds.try_subscription_ack('deep', 'token', (repeat('[', 200) || repeat(']', 200))::jsonb);
