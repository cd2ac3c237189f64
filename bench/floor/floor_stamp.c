/*
 * The floor for a stamping trigger (issue 11's bench): a BEFORE INSERT row trigger in C that
 * only copies the new row and sets its canonical_id to its distinct_id, with no lookup at all.
 * No stamping trigger can cost less than this; bench/stamping.sql shows how far above it
 * identity_merge's trigger is. Not part of the extension: built and installed by bench/run.sh.
 */
#include "postgres.h"
#include "fmgr.h"
#include "access/htup_details.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/rel.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(floor_stamp);

Datum
floor_stamp(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	int			src, dst;
	int			cols[1];
	Datum		values[1];
	bool		nulls[1];

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || !TRIGGER_FIRED_BY_INSERT(td->tg_event))
		elog(ERROR, "floor_stamp: only as a BEFORE INSERT FOR EACH ROW trigger");
	desc = RelationGetDescr(td->tg_relation);
	src = SPI_fnumber(desc, "distinct_id");
	dst = SPI_fnumber(desc, "canonical_id");
	if (src <= 0 || dst <= 0 ||
		TupleDescAttr(desc, src - 1)->atttypid != TupleDescAttr(desc, dst - 1)->atttypid)
		elog(ERROR, "floor_stamp: needs distinct_id and canonical_id columns of one type");
	cols[0] = dst;
	values[0] = heap_getattr(td->tg_trigtuple, src, desc, &nulls[0]);
	return PointerGetDatum(heap_modify_tuple_by_cols(td->tg_trigtuple, desc, 1, cols, values, nulls));
}
