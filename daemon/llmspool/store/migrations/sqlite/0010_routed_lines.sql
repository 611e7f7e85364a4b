-- Model routing of job lines (issue 21): a line an operation's route rules sent to another
-- model keeps the provider and model it asked for, whose standard price its saving (or extra
-- cost) is measured against, under the source 'routing'. NULL: sent as asked.
ALTER TABLE job_requests ADD COLUMN routed_from_provider TEXT;
ALTER TABLE job_requests ADD COLUMN routed_from_model TEXT;
