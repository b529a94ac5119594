"""The prediction store: schema, layout, writer and readers of every prediction and feedback label the model
server logs; the canary, drift, alerts and batch scoring read it through here."""
