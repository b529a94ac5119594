"""Erasure requests (LGPD art. 18, GDPR art. 17): where a subject is, and (to come) removing them."""
